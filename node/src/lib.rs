//! skiff-node
