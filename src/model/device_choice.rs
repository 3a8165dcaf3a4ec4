//! `--device cuda|cpu` and the automatic choice when it is not given: CUDA when a driver, a device
//! and the compiled kernels are all present, else the CPU, with one line saying which and why.
//! The decision is a pure function of a [`Probe`], so it is tested without a GPU.
use crate::error::{Error, Result};

/// Where the model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceKind {
    /// The CPU reference backend.
    Cpu,
    /// The CUDA backend on GPU 0.
    Cuda,
}

/// What this machine and binary offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// libcuda can be loaded.
    pub driver: bool,
    /// CUDA devices the driver reports.
    pub devices: usize,
    /// The kernels were compiled into this binary.
    pub kernels: bool,
}

impl Probe {
    /// Probes this machine; never panics (the driver library is looked for before any CUDA call).
    pub fn detect() -> Probe {
        let driver = crate::device::driver_present();
        Probe {
            driver,
            devices: if driver {
                crate::device::device_count()
            } else {
                0
            },
            kernels: crate::sys::KERNELS_BUILT,
        }
    }

    /// Why CUDA cannot run here, or None when it can.
    pub fn missing(&self) -> Option<Error> {
        if !self.driver {
            Some(Error::NoDevice(
                "the CUDA driver library (libcuda.so) is not installed".into(),
            ))
        } else if self.devices == 0 {
            Some(Error::NoDevice("the driver reports no CUDA device".into()))
        } else if !self.kernels {
            Some(Error::KernelsNotBuilt("--device cuda"))
        } else {
            None
        }
    }
}

/// The device chosen and the one info line that says so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub kind: DeviceKind,
    pub info: String,
}

/// `requested` when it can run (an explicit `--device cuda` that cannot is an error naming why);
/// without a request, CUDA when it can run, else the CPU.
pub fn choose_device(requested: Option<DeviceKind>, probe: &Probe) -> Result<Choice> {
    match (requested, probe.missing()) {
        (Some(DeviceKind::Cpu), _) => Ok(Choice {
            kind: DeviceKind::Cpu,
            info: "device: cpu (--device cpu)".into(),
        }),
        (Some(DeviceKind::Cuda), Some(e)) => Err(e),
        (Some(DeviceKind::Cuda), None) => Ok(Choice {
            kind: DeviceKind::Cuda,
            info: "device: cuda:0 (--device cuda)".into(),
        }),
        (None, None) => Ok(Choice {
            kind: DeviceKind::Cuda,
            info: format!(
                "device: cuda:0 (auto: {} CUDA device(s), kernels built; --device cpu for the CPU)",
                probe.devices
            ),
        }),
        (None, Some(e)) => Ok(Choice {
            kind: DeviceKind::Cpu,
            info: format!("device: cpu (auto: {e})"),
        }),
    }
}
