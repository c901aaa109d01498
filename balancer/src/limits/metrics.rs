//! The limits' metric families: `lb_connections` (client connections open)
//! and `lb_limited_total{reason}` (what [`super::Rejected`] counted).

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

use super::Limiter;
use crate::metrics::{counter_value, gauge};

impl Collector for Limiter {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        gauge(
            &mut enc,
            "lb_connections",
            "client connections open (all listeners)",
            self.open() as u64,
        )?;
        let mut m = enc.encode_descriptor(
            "lb_limited",
            "requests and connections refused or closed by a limit",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in self.rejected.by_reason() {
            counter_value(&mut m.encode_family(&[("reason", reason)])?, n)?;
        }
        Ok(())
    }
}
