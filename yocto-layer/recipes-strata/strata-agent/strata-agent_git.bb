# nooelint: oelint.var.bbclassextend
# (A device service with a systemd unit and a system user: nothing to build
# for the host or an SDK, so no BBCLASSEXTEND.)
SUMMARY = "Strata device agent: bonded-cellular live video over RIST"
DESCRIPTION = "strata-agent drives USB cellular modems through ModemManager \
               and NetworkManager, captures from V4L2, encodes with GStreamer \
               and sends one bonded RIST stream over every link to the Strata \
               relay. The package also carries the device files: hardened \
               systemd unit, first-boot setup, default configuration, udev \
               rules and D-Bus/polkit policy."
# Placeholder address until the project has a public home; the linter would
# fetch it, and this tree is linted without internet access.
# nooelint: oelint.vars.homepageping
HOMEPAGE = "https://example.invalid/strata"
BUGTRACKER = "https://example.invalid/strata/issues"
SECTION = "multimedia"
LICENSE = "MPL-2.0"
# The repository states its license in the workspace manifest only.
LIC_FILES_CHKSUM = "file://LICENSE;md5=815ca599c9df247a0c7f619bab123dad"

# bindgen (librist bindings) needs libclang at build time.
DEPENDS = "clang-native \
           gstreamer1.0 \
           gstreamer1.0-plugins-base \
           librist \
          "

# The layer lives in the repository it builds, so it cannot name its own
# commit: a release pins STRATA_SRCREV from local.conf or a distro layer;
# without that the recipe follows the branch head.
STRATA_GIT_URI ??= "git://example.invalid/strata.git;protocol=https;branch=main"
STRATA_SRCREV ??= "${AUTOREV}"
PV = "0.1.0+git"
SRC_URI = "${STRATA_GIT_URI}"
SRCREV = "${STRATA_SRCREV}"

require ${BPN}-crates.inc

inherit cargo cargo-update-recipe-crates pkgconfig systemd useradd

# A workspace member: build it from its directory, with the workspace lock.
CARGO_SRC_DIR = "firmware/agent"
CARGO_LOCK_PATH = "${S}/Cargo.lock"

export LIBCLANG_PATH = "${STAGING_LIBDIR_NATIVE}"
export STRATA_SYSROOT = "${STAGING_DIR_TARGET}"
# The public half of the ed25519 release key (strata-release keygen), baked
# into the agent for self-update; set STRATA_RELEASE_KEY in local.conf or a
# bbappend. Empty: the agent cannot self-update.
STRATA_RELEASE_KEY ??= ""
export STRATA_RELEASE_PUBKEY = "${STRATA_RELEASE_KEY}"

do_install:append() {
    SYSTEMD_UNITDIR="${systemd_system_unitdir}" \
    SYSTEMD_PRESETDIR="${systemd_unitdir}/system-preset" \
    UDEV_RULESDIR="${nonarch_base_libdir}/udev/rules.d" \
    SYSUSERSDIR="${nonarch_libdir}/sysusers.d" \
        ${S}/device/install.sh ${D}
}

# Same user as device/sysusers/strata.conf, created at build time.
USERADD_PACKAGES = "${PN}"
USERADD_PARAM:${PN} = "--system --home-dir ${localstatedir}/lib/strata --no-create-home \
                       --shell /sbin/nologin --user-group --groups video,audio strata"

SYSTEMD_SERVICE:${PN} = "strata-agent.service strata-firstboot.service"

FILES:${PN} += "${datadir}/dbus-1/system.d \
                ${datadir}/polkit-1/rules.d \
                ${datadir}/strata \
                ${libexecdir}/strata \
                ${localstatedir}/lib/strata \
                ${nonarch_base_libdir}/udev/rules.d \
                ${nonarch_libdir}/sysusers.d \
                ${systemd_unitdir}/system-preset \
               "
CONFFILES:${PN} = "${sysconfdir}/strata/agent.toml"

# What the agent's pipelines and first-boot setup use at run time.
RDEPENDS:${PN} = "ca-certificates \
                  dbus \
                  e2fsprogs-resize2fs \
                  gstreamer1.0-libav \
                  gstreamer1.0-plugins-bad-mpegtsdemux \
                  gstreamer1.0-plugins-bad-mpegtsmux \
                  gstreamer1.0-plugins-bad-videoparsersbad \
                  gstreamer1.0-plugins-base-alsa \
                  gstreamer1.0-plugins-base-app \
                  gstreamer1.0-plugins-base-audioconvert \
                  gstreamer1.0-plugins-base-audioresample \
                  gstreamer1.0-plugins-base-audiotestsrc \
                  gstreamer1.0-plugins-base-playback \
                  gstreamer1.0-plugins-base-typefindfunctions \
                  gstreamer1.0-plugins-base-videoconvertscale \
                  gstreamer1.0-plugins-base-videorate \
                  gstreamer1.0-plugins-base-videotestsrc \
                  gstreamer1.0-plugins-good-audioparsers \
                  gstreamer1.0-plugins-good-flv \
                  gstreamer1.0-plugins-good-isomp4 \
                  gstreamer1.0-plugins-good-jpeg \
                  gstreamer1.0-plugins-good-matroska \
                  gstreamer1.0-plugins-good-video4linux2 \
                  gstreamer1.0-plugins-ugly-x264 \
                  librist \
                  modemmanager \
                  networkmanager \
                  polkit \
                  util-linux-findmnt \
                  util-linux-partx \
                  util-linux-sfdisk \
                 "

CVE_PRODUCT = "strata-agent"
