//! The service manager's view of depmap (`systemd/depmap.service`, `Type=notify`): READY once
//! the first poll has succeeded, watchdog keep-alives from the poll loop (a stuck loop stops
//! them and systemd restarts the service), and RELOADING/STOPPING around SIGHUP and SIGTERM.
//! Outside systemd (no `NOTIFY_SOCKET`) every call does nothing.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

pub struct ServiceManager {
    /// `WatchdogSec`, when the unit set one for this process.
    watchdog: Option<Duration>,
    last_ping: Option<Instant>,
    failed_logged: bool,
}

impl ServiceManager {
    pub fn from_env() -> ServiceManager {
        ServiceManager {
            watchdog: sd_notify::watchdog_enabled(),
            last_ping: None,
            failed_logged: false,
        }
    }

    fn send(&mut self, state: &[NotifyState]) {
        if let Err(e) = sd_notify::notify(state)
            && !self.failed_logged
        {
            tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
            self.failed_logged = true;
        }
    }

    /// The first poll succeeded: the service is up.
    pub fn ready(&mut self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
        self.last_ping = Some(Instant::now());
    }

    /// Called by the poll loop after each poll: a watchdog keep-alive at a third of the
    /// watchdog period at most.
    pub fn alive(&mut self) {
        let Some(period) = self.watchdog else { return };
        if self.last_ping.is_none_or(|t| t.elapsed() >= period / 3) {
            self.send(&[NotifyState::Watchdog]);
            self.last_ping = Some(Instant::now());
        }
    }

    pub fn reloading(&mut self) {
        let now = NotifyState::monotonic_usec_now();
        match now {
            Ok(t) => self.send(&[NotifyState::Reloading, t]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    pub fn reloaded(&mut self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn stopping(&mut self) {
        self.send(&[NotifyState::Stopping]);
    }
}

/// Sets the status line `systemctl status` shows, from any thread (no READY or other state).
pub fn status(text: &str) {
    if let Err(e) = sd_notify::notify(&[NotifyState::Status(text)]) {
        tracing::debug!(error = %e, "cannot set the service status (NOTIFY_SOCKET)");
    }
}
