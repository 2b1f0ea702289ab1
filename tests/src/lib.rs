//! skiff-tests
