//! The one place where cargo features map to burn devices.

use std::str::FromStr;

use burn::tensor::Device;

/// A compute backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// burn's flex CPU backend (AVX-512 matmul kernels chosen at run time).
    #[default]
    Cpu,
    /// wgpu's best adapter (Vulkan/Metal/DX12); needs the `wgpu` feature.
    Wgpu,
    /// wgpu on a CPU adapter, e.g. Mesa's software Vulkan (lavapipe); needs the `wgpu` feature.
    WgpuCpu,
    /// CUDA device 0; needs the `cuda` feature.
    Cuda,
}

impl FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" | "flex" => Ok(Backend::Cpu),
            "wgpu" => Ok(Backend::Wgpu),
            "wgpu-cpu" => Ok(Backend::WgpuCpu),
            "cuda" => Ok(Backend::Cuda),
            other => Err(format!(
                "unknown backend {other:?}: expected cpu, wgpu, wgpu-cpu or cuda"
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
            #[cfg(feature = "wgpu")]
            Backend::WgpuCpu => Ok(Device::wgpu(burn::tensor::DeviceKind::Cpu)),
            #[cfg(not(feature = "wgpu"))]
            Backend::Wgpu | Backend::WgpuCpu => Err(
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
