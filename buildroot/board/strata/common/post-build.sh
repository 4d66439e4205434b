#!/bin/sh
# Strata post-build step shared by every Strata defconfig. Buildroot passes
# BR2_ROOTFS_POST_SCRIPT_ARGS after the target directory; they are meant for
# genimage and ignored here.
#
# Mounts the persistent data partition (label "strata-data", made by each
# board's genimage.cfg) on /var/lib/strata. The fstab line is defined once,
# in device/fstab/, and installed by the strata-agent package.
set -eu

TARGET_DIR=${1:?usage: post-build.sh TARGET_DIR}
FSTAB_LINE_FILE="$TARGET_DIR/usr/share/strata/strata-data.fstab"

line=$(cat "$FSTAB_LINE_FILE")
if ! grep -qxF "$line" "$TARGET_DIR/etc/fstab"; then
	echo "$line" >>"$TARGET_DIR/etc/fstab"
fi
