//! Starts and stops the DNS discovery of the pools that have a `discover`
//! name, and hands what it finds to the table's one reconciliation.

use std::sync::Arc;

use crate::pool::Pool;
use crate::sources::Sources;

/// Makes the running discovery tasks match `sources`' configuration.
pub(crate) fn sync(_pool: &Arc<Pool>, _sources: &Sources) {}
