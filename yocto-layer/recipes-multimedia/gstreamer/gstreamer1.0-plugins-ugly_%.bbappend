# strata-agent encodes H.264 with x264enc (license flag accepted in
# conf/distro/strata.conf).
PACKAGECONFIG:append:strata = " x264"
