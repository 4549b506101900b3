//! Renews this member's certificate once two thirds of its lifetime have passed, and hands
//! the new one to the listeners and the peer connector without a restart.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::pki::{validity, Pki};
use super::tls::CertSlot;
use super::unix_seconds;

/// The longest pause between two looks at the certificate.
const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(3600);

/// When a certificate valid from `not_before` to `not_after` is due for renewal.
pub fn renewal_due(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    not_before + lifetime * 2 / 3
}

/// Keeps the member certificate of `pki` fresh until `stop` turns true.
pub async fn run(pki: Pki, slot: Arc<CertSlot>, mut stop: watch::Receiver<bool>) {
    loop {
        let wait = match next_check(&pki) {
            Ok(wait) => wait,
            Err(error) => {
                tracing::error!(%error, "cannot read the member certificate");
                MAX_CHECK_INTERVAL
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        if let Err(error) = renew_if_due(&pki, &slot) {
            tracing::error!(%error, "renewing the member certificate failed; will retry");
        }
    }
}

/// How long until the certificate should be looked at again.
fn next_check(pki: &Pki) -> anyhow::Result<Duration> {
    let pem = std::fs::read_to_string(pki.node_cert_path())?;
    let (not_before, not_after) = validity(&pem)?;
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    let until_due = renewal_due(not_before, not_after)
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    // Also retried a while after a failed renewal, which left the certificate due.
    Ok(until_due
        .max(lifetime / 50)
        .clamp(Duration::from_millis(200), MAX_CHECK_INTERVAL))
}

fn renew_if_due(pki: &Pki, slot: &CertSlot) -> anyhow::Result<()> {
    let pem = std::fs::read_to_string(pki.node_cert_path())?;
    let (not_before, not_after) = validity(&pem)?;
    if SystemTime::now() < renewal_due(not_before, not_after) {
        return Ok(());
    }
    let renewed = pki.renew_member()?;
    slot.reload()?;
    let expires = validity(&renewed)?.1;
    tracing::info!(
        expires = %unix_seconds(expires),
        "renewed the member certificate"
    );
    Ok(())
}
