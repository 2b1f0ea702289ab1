//! skiff-cri
