#!/bin/sh
# Installs the Strata device files into a root filesystem tree. The Buildroot
# package, the Yocto recipe and the QEMU test's Debian rootfs all call this,
# so every image gets the same files in the same places.
#
# usage: device/install.sh DESTDIR
#
# Directories a build system may place differently can be overridden from the
# environment (defaults are for a merged-/usr systemd system):
#   SYSTEMD_UNITDIR   /usr/lib/systemd/system
#   SYSTEMD_PRESETDIR /usr/lib/systemd/system-preset
#   UDEV_RULESDIR     /usr/lib/udev/rules.d
#   SYSUSERSDIR       /usr/lib/sysusers.d
# The helpers stay in /usr/libexec/strata: the unit and udev rules name them.
# The data partition's fstab line goes to /usr/share/strata/; images that
# have that partition append it to /etc/fstab.
set -eu

src=$(cd "$(dirname "$0")" && pwd)
dest=${1:?usage: install.sh DESTDIR}

unitdir=${SYSTEMD_UNITDIR:-/usr/lib/systemd/system}
presetdir=${SYSTEMD_PRESETDIR:-/usr/lib/systemd/system-preset}
rulesdir=${UDEV_RULESDIR:-/usr/lib/udev/rules.d}
sysusersdir=${SYSUSERSDIR:-/usr/lib/sysusers.d}

inst() {
	mode=$1 from=$2 to=$3
	install -D -m "$mode" "$src/$from" "$dest$to"
}

inst 0644 systemd/strata-agent.service "$unitdir/strata-agent.service"
inst 0644 systemd/strata-firstboot.service "$unitdir/strata-firstboot.service"
inst 0644 preset/80-strata.preset "$presetdir/80-strata.preset"
inst 0755 libexec/strata-firstboot /usr/libexec/strata/strata-firstboot
inst 0755 libexec/strata-wwan-name /usr/libexec/strata/strata-wwan-name
inst 0644 udev/70-strata-capture.rules "$rulesdir/70-strata-capture.rules"
inst 0644 udev/76-strata-modems.rules "$rulesdir/76-strata-modems.rules"
inst 0644 dbus/strata-agent.conf /usr/share/dbus-1/system.d/strata-agent.conf
inst 0644 polkit/50-strata-agent.rules /usr/share/polkit-1/rules.d/50-strata-agent.rules
inst 0644 sysusers/strata.conf "$sysusersdir/strata.conf"
inst 0644 config/agent.toml /etc/strata/agent.toml
inst 0644 README.md /usr/share/doc/strata/README.md
inst 0644 fstab/strata-data.fstab /usr/share/strata/strata-data.fstab
# Mount point of the data partition; first boot sets owner and mode.
install -d -m 0700 "$dest/var/lib/strata"
