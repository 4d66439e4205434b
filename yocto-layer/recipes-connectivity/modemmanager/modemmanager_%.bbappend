# QMI and MBIM modems, and polkit so that only root and user strata
# (device/polkit) may control them.
PACKAGECONFIG:append:strata = " mbim qmi polkit"
