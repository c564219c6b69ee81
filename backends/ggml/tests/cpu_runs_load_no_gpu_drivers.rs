//! Choosing the CPU, or letting `auto` choose, must not enumerate graft's wgpu adapters: that
//! loads every installed Vulkan driver (Mesa's lavapipe maps LLVM, +45 MB resident) into a
//! process that never uses them. Its own test binary, so that no other test registers wgpu
//! first.
#![cfg(feature = "wgpu")]

use graft_ggml::{select_device, BackendChoice};

#[test]
fn cpu_and_auto_choices_leave_wgpu_unregistered() {
    assert!(select_device(BackendChoice::Cpu).unwrap().is_none());
    if let Some(d) = select_device(BackendChoice::Auto).unwrap() {
        assert_ne!(d.backend, "wgpu", "{d:?}");
    }
    assert!(!graft_wgpu::is_registered());
    // Asking for wgpu by name registers it (with or without a device to show for it).
    let _ = select_device(BackendChoice::Wgpu);
    assert!(graft_wgpu::is_registered() || std::env::var("GRAFT_WGPU").is_ok_and(|v| v == "0"));
}
