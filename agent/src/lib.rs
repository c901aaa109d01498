//! The load agent: reports its host's (or cgroup's) CPU and memory as JSON.
//!
//! - [`report`]: the wire format, shared with the balancer.

#![forbid(unsafe_code)]

pub mod report;

pub use report::{LoadReport, ReportError};
