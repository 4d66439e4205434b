################################################################################
#
# librist
#
################################################################################

LIBRIST_VERSION = 0.2.11
LIBRIST_SOURCE = librist-v$(LIBRIST_VERSION).tar.gz
LIBRIST_SITE = https://code.videolan.org/rist/librist/-/archive/v$(LIBRIST_VERSION)
LIBRIST_LICENSE = BSD-2-Clause
LIBRIST_LICENSE_FILES = COPYING
LIBRIST_INSTALL_STAGING = YES
LIBRIST_DEPENDENCIES = mbedtls
# The command line tools and the cmocka tests are not needed on the device;
# cJSON and lz4 come from librist's own copies when not in staging.
LIBRIST_CONF_OPTS = \
	-Dbuilt_tools=false \
	-Dtest=false \
	-Duse_mbedtls=true \
	-Dbuiltin_mbedtls=false

ifeq ($(BR2_PACKAGE_CJSON),y)
LIBRIST_DEPENDENCIES += cjson
endif

$(eval $(meson-package))
