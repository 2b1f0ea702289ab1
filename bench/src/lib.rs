//! skiff-bench
