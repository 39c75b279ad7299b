//! The one place where cargo features map to burn devices.

use std::str::FromStr;

use burn::tensor::Device;

/// A compute backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// burn's flex CPU backend (AVX-512 matmul kernels chosen at run time).
    #[default]
    Cpu,
    /// wgpu (Vulkan/Metal/DX12, or Mesa's software Vulkan); needs the `wgpu` feature.
    Wgpu,
    /// CUDA device 0; needs the `cuda` feature.
    Cuda,
}

impl FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" | "flex" => Ok(Backend::Cpu),
            "wgpu" => Ok(Backend::Wgpu),
            "cuda" => Ok(Backend::Cuda),
            other => Err(format!(
                "unknown backend {other:?}: expected cpu, wgpu or cuda"
            )),
        }
    }
}

impl Backend {
    /// The device of this backend, or an error naming the cargo feature it needs.
    pub fn device(self) -> Result<Device, String> {
        match self {
            Backend::Cpu => Ok(Device::flex()),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
            #[cfg(not(feature = "wgpu"))]
            Backend::Wgpu => Err(
                "the wgpu backend needs lm-burn's `wgpu` feature (cargo build --features wgpu)"
                    .into(),
            ),
            #[cfg(feature = "cuda")]
            Backend::Cuda => Ok(Device::cuda(0)),
            #[cfg(not(feature = "cuda"))]
            Backend::Cuda => Err(
                "the cuda backend needs lm-burn's `cuda` feature (cargo build --features cuda)"
                    .into(),
            ),
        }
    }
}

/// The default device: the CPU backend.
pub fn default_device() -> Device {
    Device::flex()
}
