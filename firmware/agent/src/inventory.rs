//! What the device has, as the owner thinks of it: links, modems, media
//! inputs (capture devices, the video files in `media_dir`, the test
//! pattern). Published (retained) whenever it changes.
//!
//! Capture devices come from GStreamer's device monitor (the V4L2 provider
//! lists every capture node with its formats), so what is offered is exactly
//! what the pipeline can open.

use std::path::PathBuf;

use gstreamer as gst;
use gstreamer::prelude::*;
use strata_proto::message::{Input, InputKind, Inventory, Link, LinkKind, TEST_PATTERN};

use crate::config::AgentConfig;
use crate::stream::LinkPlan;

/// The media inputs and where each capture input lives.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inputs {
    /// As published.
    pub list: Vec<Input>,
    /// Device node of each V4L2 input id.
    pub devices: Vec<(String, PathBuf)>,
    /// Path of each media file input id.
    pub files: Vec<(String, PathBuf)>,
}

impl Inputs {
    /// The device node of a V4L2 input.
    pub fn v4l2_device(&self, id: &str) -> Option<&PathBuf> {
        self.devices.iter().find(|(i, _)| i == id).map(|(_, p)| p)
    }

    /// The path of a media file input.
    pub fn file(&self, id: &str) -> Option<&PathBuf> {
        self.files.iter().find(|(i, _)| i == id).map(|(_, p)| p)
    }
}

/// File name endings offered as media inputs.
const MEDIA_EXTENSIONS: [&str; 7] = ["mp4", "mkv", "mov", "ts", "m2ts", "webm", "flv"];
/// At most this many files are offered (the inventory stays small).
const MAX_FILES: usize = 64;

/// (id, file name, path) of the media files directly in `dir`, by name.
/// Names that cannot go into a pipeline description safely (quotes,
/// backslashes, control characters) are skipped.
fn media_files(dir: &std::path::Path) -> Vec<(String, String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(String, String, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            let name = path.file_name()?.to_str()?.to_string();
            let ext = path.extension()?.to_str()?.to_ascii_lowercase();
            let usable = MEDIA_EXTENSIONS.contains(&ext.as_str())
                && path.is_file()
                && !path
                    .to_str()?
                    .chars()
                    .any(|c| c == '"' || c == '\\' || c.is_control());
            usable.then(|| (file_id(&name), name, path))
        })
        .collect();
    found.sort_by(|a, b| a.1.cmp(&b.1));
    // Two names can make one id ("A.mp4", "a.mp4"): the first keeps it.
    let mut seen = std::collections::HashSet::new();
    found.retain(|f| seen.insert(f.0.clone()));
    found.truncate(MAX_FILES);
    found
}

/// A media file's input id: `file-` and its name in `[a-z0-9-]`.
fn file_id(name: &str) -> String {
    slug("file", name)
}

/// `prefix-` and `text` in `[a-z0-9-]`, at most 56 characters of it.
fn slug(prefix: &str, text: &str) -> String {
    let mut id: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    id.truncate(56);
    format!("{prefix}-{}", id.trim_matches('-'))
}

/// Lists the inputs: capture devices (if enabled) and the test pattern.
pub fn inputs(cfg: &AgentConfig) -> Inputs {
    let mut out = Inputs::default();
    if cfg.inputs.auto_detect {
        for (id, name, path, formats) in capture_devices() {
            if out.devices.iter().any(|(i, _)| *i == id) {
                continue;
            }
            out.devices.push((id.clone(), path));
            out.list.push(Input {
                id,
                kind: InputKind::V4l2,
                name,
                formats,
            });
        }
    }
    if let Some(dev) = &cfg.inputs.device
        && !out.devices.iter().any(|(_, p)| p == dev)
    {
        let id = input_id(&dev.display().to_string());
        out.devices.push((id.clone(), dev.clone()));
        out.list.push(Input {
            id,
            kind: InputKind::V4l2,
            name: dev.display().to_string(),
            formats: Vec::new(),
        });
    }
    for (id, name, path) in media_files(&cfg.media_dir) {
        out.files.push((id.clone(), path));
        out.list.push(Input {
            id,
            kind: InputKind::File,
            name,
            formats: Vec::new(),
        });
    }
    if cfg.inputs.test_pattern || out.list.is_empty() {
        out.list.push(Input {
            id: TEST_PATTERN.into(),
            kind: InputKind::TestPattern,
            name: "Test pattern with tone".into(),
            formats: vec!["I420 3840x2160@60".into()],
        });
    }
    out
}

/// A stable input id for a capture device: from its bus path (the USB port
/// it is plugged into), so stored settings keep meaning the same camera
/// when devices are re-plugged and /dev/videoN numbers change.
fn input_id(stable: &str) -> String {
    slug("cam", stable.trim_start_matches("/dev/"))
}

/// (id, name, device node, formats) of every V4L2 video source GStreamer sees.
fn capture_devices() -> Vec<(String, String, PathBuf, Vec<String>)> {
    let monitor = gst::DeviceMonitor::new();
    let _ = monitor.add_filter(Some("Video/Source"), None);
    if monitor.start().is_err() {
        return Vec::new();
    }
    let mut found = Vec::new();
    for dev in monitor.devices() {
        let Some(props) = dev.properties() else {
            continue;
        };
        let Ok(path) = props.get::<String>("device.path") else {
            continue;
        };
        let stable = props
            .get::<String>("device.bus_path")
            .or_else(|_| props.get::<String>("device.serial"))
            .unwrap_or_else(|_| path.clone());
        let formats = dev
            .caps()
            .map(|caps| {
                caps.iter()
                    .filter_map(|s| {
                        let w = s.get::<i32>("width").ok()?;
                        let h = s.get::<i32>("height").ok()?;
                        let fourcc = s
                            .get::<String>("format")
                            .unwrap_or_else(|_| s.name().to_string());
                        let fps = s
                            .get::<gst::Fraction>("framerate")
                            .map(|f| f.numer() / f.denom().max(1))
                            .unwrap_or(0);
                        Some(format!("{fourcc} {w}x{h}@{fps}"))
                    })
                    .take(32)
                    .collect()
            })
            .unwrap_or_default();
        found.push((
            input_id(&stable),
            dev.display_name().to_string(),
            PathBuf::from(path),
            formats,
        ));
    }
    monitor.stop();
    found
}

/// The links the bond would use.
pub fn links(plan: &LinkPlan) -> Vec<Link> {
    plan.names()
        .into_iter()
        .map(|name| Link {
            kind: if name.starts_with("wwan") {
                LinkKind::Cellular
            } else if name.starts_with("eth") || name.starts_with("en") {
                LinkKind::Ethernet
            } else if name.starts_with("wl") {
                LinkKind::Wifi
            } else {
                LinkKind::Other
            },
            up: true,
            modem: None,
            name,
        })
        .collect()
}

/// The links of this configuration: emulated ones in simulation, else the
/// `include` list minus `exclude`.
pub fn link_plan(cfg: &AgentConfig) -> LinkPlan {
    match &cfg.simulation {
        Some(sim) => LinkPlan::Simulated {
            seed: sim.seed,
            links: sim.links.clone(),
        },
        None => LinkPlan::Interfaces(
            cfg.links
                .include
                .iter()
                .filter(|n| !cfg.links.exclude.contains(n))
                .cloned()
                .collect(),
        ),
    }
}

/// The whole inventory.
pub fn inventory(plan: &LinkPlan, inputs: &Inputs) -> Inventory {
    Inventory {
        links: links(plan),
        modems: Vec::new(),
        inputs: inputs.list.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_ids_are_stable_and_topic_safe() {
        assert_eq!(
            input_id("platform-xhci-hcd.0.auto-usb-0:1.1:1.0"),
            "cam-platform-xhci-hcd-0-auto-usb-0-1-1-1-0"
        );
        assert_eq!(input_id("/dev/video0"), "cam-video0");
        assert!(input_id(&"x".repeat(200)).len() <= 60);
    }
}
