################################################################################
#
# strata-agent
#
################################################################################

# Built from the repository this BR2_EXTERNAL tree lives in: the agent, its
# device files and this package change together. Keep the version in step
# with [workspace.package] in Cargo.toml.
STRATA_AGENT_VERSION = 0.1.0
STRATA_AGENT_SITE = $(BR2_EXTERNAL_STRATA_PATH)/..
STRATA_AGENT_SITE_METHOD = local
# Build outputs of the host workspace and of an in-tree Buildroot output.
STRATA_AGENT_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = \
	--exclude /target --exclude /buildroot/output
STRATA_AGENT_SUBDIR = firmware/agent
STRATA_AGENT_LICENSE = MPL-2.0
STRATA_AGENT_LICENSE_FILES = LICENSE

# host-clang: bindgen generates the librist bindings at build time.
STRATA_AGENT_DEPENDENCIES = \
	host-clang \
	host-pkgconf \
	gst1-plugins-base \
	gstreamer1 \
	librist

# pkg-config through Buildroot's wrapper already points into staging.
STRATA_AGENT_CARGO_ENV = \
	PKG_CONFIG_ALLOW_CROSS=1 \
	LIBCLANG_PATH=$(HOST_DIR)/lib \
	STRATA_SYSROOT=$(STAGING_DIR)

# The release key the agent trusts for self-update (baked in at build time).
ifneq ($(call qstrip,$(BR2_PACKAGE_STRATA_AGENT_RELEASE_PUBKEY)),)
STRATA_AGENT_CARGO_ENV += \
	STRATA_RELEASE_PUBKEY=$(call qstrip,$(BR2_PACKAGE_STRATA_AGENT_RELEASE_PUBKEY))
endif

STRATA_AGENT_PROFILE = $(if $(BR2_ENABLE_DEBUG),debug,release)

# The local site method downloads nothing, so Buildroot's cargo vendoring
# (a download post-process) never runs: vendor here from the same Cargo.lock.
# This is the only step that needs network access.
define STRATA_AGENT_CARGO_VENDOR
	mkdir -p $(BR_CARGO_HOME) $(@D)/.cargo
	cd $(@D) && $(HOST_MAKE_ENV) $(PKG_COMMON_CARGO_ENV) \
		flock $(BR_CARGO_HOME)/.br-lock \
		cargo vendor --locked --manifest-path Cargo.toml VENDOR \
		> $(@D)/.cargo/config.toml
endef
STRATA_AGENT_PRE_CONFIGURE_HOOKS += STRATA_AGENT_CARGO_VENDOR

# cargo install would rebuild the workspace member outside its workspace;
# take the binary cargo build made, and the device files of the same tree.
define STRATA_AGENT_INSTALL_TARGET_CMDS
	$(INSTALL) -D -m 0755 \
		$(@D)/target/$(RUSTC_TARGET_NAME)/$(STRATA_AGENT_PROFILE)/strata-agent \
		$(TARGET_DIR)/usr/bin/strata-agent
	$(@D)/device/install.sh $(TARGET_DIR)
endef

# Same user as device/sysusers/strata.conf, created at build time so that
# the image boots with it.
define STRATA_AGENT_USERS
	strata -1 strata -1 * /var/lib/strata - video,audio Strata agent
endef

# USB modems (QMI, MBIM, NCM, ECM/RNDIS data; option/qcserial AT ports),
# UVC cameras and HDMI grabbers with their USB audio, and the PCI 16550 the
# QEMU test uses as a modem.
define STRATA_AGENT_LINUX_CONFIG_FIXUPS
	$(call KCONFIG_ENABLE_OPT,CONFIG_USB_NET_DRIVERS)
	$(call KCONFIG_ENABLE_OPT,CONFIG_USB_USBNET)
	$(call KCONFIG_ENABLE_OPT,CONFIG_USB_NET_CDCETHER)
	$(call KCONFIG_ENABLE_OPT,CONFIG_USB_NET_CDC_NCM)
	$(call KCONFIG_ENABLE_OPT,CONFIG_USB_NET_CDC_MBIM)
	$(call KCONFIG_ENABLE_OPT,CONFIG_USB_NET_QMI_WWAN)
	$(call KCONFIG_ENABLE_OPT,CONFIG_USB_NET_RNDIS_HOST)
	$(call KCONFIG_ENABLE_OPT,CONFIG_USB_WDM)
	$(call KCONFIG_ENABLE_OPT,CONFIG_USB_ACM)
	$(call KCONFIG_ENABLE_OPT,CONFIG_USB_SERIAL)
	$(call KCONFIG_ENABLE_OPT,CONFIG_USB_SERIAL_WWAN)
	$(call KCONFIG_ENABLE_OPT,CONFIG_USB_SERIAL_OPTION)
	$(call KCONFIG_ENABLE_OPT,CONFIG_USB_SERIAL_QUALCOMM)
	$(call KCONFIG_ENABLE_OPT,CONFIG_MEDIA_SUPPORT)
	$(call KCONFIG_ENABLE_OPT,CONFIG_MEDIA_USB_SUPPORT)
	$(call KCONFIG_ENABLE_OPT,CONFIG_MEDIA_CAMERA_SUPPORT)
	$(call KCONFIG_ENABLE_OPT,CONFIG_USB_VIDEO_CLASS)
	$(call KCONFIG_ENABLE_OPT,CONFIG_SND)
	$(call KCONFIG_ENABLE_OPT,CONFIG_SND_USB_AUDIO)
	$(call KCONFIG_ENABLE_OPT,CONFIG_SERIAL_8250_PCI)
endef

$(eval $(cargo-package))
