#!/bin/sh
# Runs after Buildroot's board/orangepi/common/post-build.sh, which wrote
# extlinux.conf and $BINARIES_DIR/genimage.cfg around one random rootfs
# PARTUUID. Replace that genimage.cfg with the Strata layout (same boot
# area and rootfs, plus the data partition), keeping the PARTUUID the
# kernel command line already names.
set -eu

BOARD_DIR=$(dirname "$0")
GENIMAGE_CFG="${BINARIES_DIR:?}/genimage.cfg"

partuuid=$(sed -n 's/^[[:space:]]*partition-uuid = \(.*\)$/\1/p' "$GENIMAGE_CFG")
if [ -z "$partuuid" ]; then
	echo "post-build: no partition-uuid in $GENIMAGE_CFG;" \
		"did board/orangepi/common/post-build.sh run first?" >&2
	exit 1
fi
sed "s/%PARTUUID%/$partuuid/g" "$BOARD_DIR/genimage.cfg.in" >"$GENIMAGE_CFG"
