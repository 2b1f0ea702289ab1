//! Selector and toleration matching: the `skiff-selectors` crate, shared with the kubelet's
//! admission (node affinity).

pub use skiff_selectors::*;
