# nooelint: oelint.var.suggestedvar.CVE_PRODUCT
# (An image is not a product of its own in the CVE database; its packages
# carry their CVE_PRODUCT.)
SUMMARY = "Strata device image"
DESCRIPTION = "A systemd image that boots into strata-agent with ModemManager, \
               NetworkManager and GStreamer. It holds no secret and allows no \
               login: the agent enrolls the device by QR code."
# Placeholder address; the linter would fetch it, and this tree is linted
# without internet access.
# nooelint: oelint.vars.homepageping
HOMEPAGE = "https://example.invalid/strata"
BUGTRACKER = "https://example.invalid/strata/issues"
SECTION = "images"
LICENSE = "MIT"

inherit core-image features_check

REQUIRED_DISTRO_FEATURES = "systemd polkit"

IMAGE_INSTALL = "packagegroup-core-boot \
                 strata-agent \
                 kernel-modules \
                 ${CORE_IMAGE_EXTRA_INSTALL} \
                "

# No root password, no SSH server, no package manager on the device.
IMAGE_FEATURES:remove = "allow-empty-password allow-root-login empty-root-password debug-tweaks"

# Mount the data partition (label strata-data, see README.md) on
# /var/lib/strata; the fstab line comes from the strata-agent package.
ROOTFS_POSTPROCESS_COMMAND += "strata_data_fstab"
strata_data_fstab() {
    line="$(cat ${IMAGE_ROOTFS}${datadir}/strata/strata-data.fstab)"
    grep -qxF "$line" ${IMAGE_ROOTFS}${sysconfdir}/fstab || \
        echo "$line" >> ${IMAGE_ROOTFS}${sysconfdir}/fstab
}
strata_data_fstab[doc] = "Appends the strata-data partition's mount to /etc/fstab"
