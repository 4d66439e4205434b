SUMMARY = "Reliable Internet Stream Transport (RIST) library"
DESCRIPTION = "librist implements the RIST protocol (simple and main \
               profiles) of the Video Services Forum, by the VideoLAN project."
# The linter fetches HOMEPAGE; this tree is linted without internet access.
# nooelint: oelint.vars.homepageping
HOMEPAGE = "https://code.videolan.org/rist/librist"
BUGTRACKER = "https://code.videolan.org/rist/librist/-/issues"
SECTION = "libs"
LICENSE = "BSD-2-Clause"
LIC_FILES_CHKSUM = "file://COPYING;md5=09a3f4fef2fbe291e90675fa6d707692"

DEPENDS = "mbedtls"

SRC_URI = "https://code.videolan.org/rist/librist/-/archive/v${PV}/librist-v${PV}.tar.gz"
# As published in Homebrew's librist formula for the same URL; not recomputed
# where this recipe was written (no access to code.videolan.org).
SRC_URI[sha256sum] = "84e413fa9a1bc4e2607ecc0e51add363e1bc5ad42f7cc5baec7b253e8f685ad3"

S = "${UNPACKDIR}/librist-v${PV}"

inherit meson pkgconfig

# The device needs the library only: no ristsender/ristreceiver, no cmocka
# tests. mbedTLS provides the PSK encryption; cJSON and lz4 come from
# librist's own copies.
EXTRA_OEMESON = "-Dbuilt_tools=false \
                 -Dtest=false \
                 -Duse_mbedtls=true \
                 -Dbuiltin_mbedtls=false \
                "

CVE_PRODUCT = "librist"

BBCLASSEXTEND = "native nativesdk"
