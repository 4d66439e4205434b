# Cellular links come up through ModemManager; user strata is authorized by
# the polkit rules from device/polkit.
PACKAGECONFIG:append:strata = " modemmanager polkit"
