//! A `cairn` process that ended before it was ready: why, from its log; and waiting for a
//! process to end.

use std::fs;
use std::path::Path;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// Why a launch did not give a ready process.
pub enum LaunchError {
    /// The process could not bind one of its ports; another one may have taken it since the
    /// harness picked it, so a retry on new ports can succeed.
    AddressInUse,
    /// Anything else; the text says what.
    Failed(String),
}

/// `None` while `child` runs; once it has exited, why, from what it wrote to `log` after
/// `launch_offset` (where this launch's output starts).
pub fn exited(child: &mut Child, log: &Path, launch_offset: u64) -> Option<LaunchError> {
    let status = child.try_wait().expect("poll the cairn process")?;
    let log = fs::read(log).unwrap_or_default();
    let offset = usize::try_from(launch_offset).expect("log offset fits in usize");
    let log = String::from_utf8_lossy(log.get(offset..).unwrap_or_default());
    if log.contains("Address already in use") || log.contains("os error 98") {
        return Some(LaunchError::AddressInUse);
    }
    Some(LaunchError::Failed(format!(
        "exited with {status} before it was ready"
    )))
}

/// Waits for `child` to exit, polling every `poll`; `None` if it still runs at `deadline`.
pub async fn wait_for_exit(
    child: &mut Child,
    deadline: Instant,
    poll: Duration,
) -> Option<ExitStatus> {
    loop {
        if let Some(status) = child.try_wait().expect("poll the cairn process") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(poll).await;
    }
}
