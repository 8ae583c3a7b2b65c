//! The workspace phase machine: which observed phases may follow which, and what a
//! reconciler should do to bring the observed phase towards the desired state.
//!
//! The desired state (what the user asked for) and the observed phase (what the runtime
//! last reported) are kept apart on purpose: loops compare the two after every event and
//! after a restart of the cell. This module holds no I/O; it only decides.

use std::fmt;
use time::OffsetDateTime;

/// How many phase changes a workspace keeps. The first change (creation) is always kept
/// so that the record still says when the workspace was made.
pub const HISTORY_LIMIT: usize = 100;

/// The observed phase of a workspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Accepted, waiting for the runtime to pick it up.
    Pending,
    /// The runtime is creating the sandbox and fetching the image.
    Creating,
    /// The sandbox exists; repositories and backups are being restored.
    Initializing,
    /// Ready for use.
    Running,
    /// Being stopped (and backed up).
    Stopping,
    /// Not running; files are kept.
    Stopped,
    /// Something went wrong; the message in the history says what.
    Failed,
    /// Gone for good.
    Deleted,
}

impl Phase {
    /// Every phase, in lifecycle order; handy for exhaustive checks.
    pub const ALL: [Phase; 8] = [
        Phase::Pending,
        Phase::Creating,
        Phase::Initializing,
        Phase::Running,
        Phase::Stopping,
        Phase::Stopped,
        Phase::Failed,
        Phase::Deleted,
    ];

    /// The stable lowercase name used in storage and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Creating => "creating",
            Phase::Initializing => "initializing",
            Phase::Running => "running",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
            Phase::Failed => "failed",
            Phase::Deleted => "deleted",
        }
    }

    /// Parses the name produced by [`Phase::as_str`].
    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Whether the workspace holds runtime resources in this phase, and so counts against
    /// the per-user limit of running workspaces.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Phase::Creating | Phase::Initializing | Phase::Running | Phase::Stopping
        )
    }

    /// Whether the machine allows moving from `self` to `to`. Staying in the same phase
    /// is never a transition: it would only add noise to the history.
    pub fn can_move_to(self, to: Phase) -> bool {
        use Phase::*;
        match self {
            Pending => matches!(to, Creating | Stopped | Failed | Deleted),
            Creating => matches!(to, Initializing | Stopping | Failed),
            Initializing => matches!(to, Running | Stopping | Failed),
            Running => matches!(to, Stopping | Failed),
            Stopping => matches!(to, Stopped | Failed),
            Stopped => matches!(to, Pending | Deleted),
            // A failed workspace may still hold a sandbox, hence Stopping; with nothing
            // left to clean up it goes straight to Stopped or Deleted.
            Failed => matches!(to, Pending | Stopping | Stopped | Deleted),
            Deleted => false,
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Desired {
    Running,
    Stopped,
    Deleted,
}

impl Desired {
    /// Every desired state.
    pub const ALL: [Desired; 3] = [Desired::Running, Desired::Stopped, Desired::Deleted];

    /// The stable lowercase name used in storage and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Desired::Running => "running",
            Desired::Stopped => "stopped",
            Desired::Deleted => "deleted",
        }
    }

    /// Parses the name produced by [`Desired::as_str`].
    pub fn parse(s: &str) -> Option<Desired> {
        Desired::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

impl fmt::Display for Desired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of a workspace's phase history.
#[derive(Clone, Debug, PartialEq)]
pub struct PhaseChange {
    pub phase: Phase,
    pub at: OffsetDateTime,
    /// Why the change happened, when there is something to say (mostly for failures).
    pub message: Option<String>,
}

/// What a reconciler should do next for one workspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing: the phase matches the desired state, or a step is already under way, or
    /// the workspace failed and waits for the user.
    None,
    Start,
    Stop,
    Delete,
}

/// A change the machine does not allow.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    #[error("a workspace cannot go from {from} to {to}")]
    IllegalTransition { from: Phase, to: Phase },
    #[error("the workspace is deleted or being deleted; create a new workspace instead")]
    Deleted,
}

/// Desired state, observed phase and the history of observed phases of one workspace.
#[derive(Clone, Debug, PartialEq)]
pub struct Lifecycle {
    pub desired: Desired,
    pub phase: Phase,
    /// Oldest first; bounded by [`HISTORY_LIMIT`].
    pub history: Vec<PhaseChange>,
}

impl Lifecycle {
    /// A new workspace: pending, with its creation as the first history entry.
    pub fn new(desired: Desired, now: OffsetDateTime) -> Self {
        Lifecycle {
            desired,
            phase: Phase::Pending,
            history: vec![PhaseChange {
                phase: Phase::Pending,
                at: now,
                message: None,
            }],
        }
    }

    /// Rebuilds a lifecycle loaded from the store. Nothing is checked: what was stored was
    /// valid when it was written, and refusing to load it would strand the workspace.
    pub fn restore(desired: Desired, phase: Phase, history: Vec<PhaseChange>) -> Self {
        Lifecycle {
            desired,
            phase,
            history,
        }
    }

    /// Moves to the observed phase `to`, recording it in the history.
    pub fn transition(
        &mut self,
        to: Phase,
        now: OffsetDateTime,
        message: Option<String>,
    ) -> Result<(), LifecycleError> {
        if !self.phase.can_move_to(to) {
            return Err(LifecycleError::IllegalTransition {
                from: self.phase,
                to,
            });
        }
        self.phase = to;
        self.history.push(PhaseChange {
            phase: to,
            at: now,
            message,
        });
        if self.history.len() > HISTORY_LIMIT {
            // Drop the oldest entries after the first, which records creation.
            let excess = self.history.len() - HISTORY_LIMIT;
            self.history.drain(1..1 + excess);
        }
        Ok(())
    }

    /// Records what the user wants. Deletion is final: once asked for, the workspace's
    /// files may already be going, so it cannot be brought back (asking for deletion
    /// again is accepted, so that retried requests succeed).
    pub fn set_desired(&mut self, d: Desired) -> Result<(), LifecycleError> {
        if d == Desired::Deleted {
            self.desired = d;
            return Ok(());
        }
        if self.desired == Desired::Deleted || self.phase == Phase::Deleted {
            return Err(LifecycleError::Deleted);
        }
        self.desired = d;
        Ok(())
    }

    /// When the observed phase last changed. A restored record with no history (which
    /// the store should never hold) reports the Unix epoch rather than failing, because
    /// this module cannot read the clock.
    pub fn since(&self) -> OffsetDateTime {
        self.history
            .last()
            .map_or(OffsetDateTime::UNIX_EPOCH, |c| c.at)
    }

    /// Whether the workspace holds runtime resources and counts as running.
    pub fn is_active(&self) -> bool {
        self.phase.is_active()
    }

    /// What a reconciler should do to move the phase towards the desired state.
    pub fn next_action(&self) -> Action {
        match (self.desired, self.phase) {
            // A failed workspace is not restarted automatically: starting it again would
            // most likely fail again. The user starts it explicitly.
            (Desired::Running, Phase::Pending | Phase::Stopped) => Action::Start,
            (Desired::Stopped, Phase::Creating | Phase::Initializing | Phase::Running) => {
                Action::Stop
            }
            (Desired::Deleted, Phase::Deleted) => Action::None,
            // Resources are released by stopping first; deletion follows once stopped.
            (Desired::Deleted, phase) if phase.is_active() => Action::Stop,
            (Desired::Deleted, _) => Action::Delete,
            _ => Action::None,
        }
    }
}

// Panicking on an unexpected result is how a test fails.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use time::Duration;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2025-01-01 00:00 UTC);

    fn at(phase: Phase) -> Lifecycle {
        Lifecycle::restore(
            Desired::Running,
            phase,
            vec![PhaseChange {
                phase,
                at: T0,
                message: None,
            }],
        )
    }

    /// The allowed transitions, written out once more as data so the table in
    /// `can_move_to` is checked against an independent copy.
    const ALLOWED: &[(Phase, Phase)] = &[
        (Phase::Pending, Phase::Creating),
        (Phase::Pending, Phase::Stopped),
        (Phase::Pending, Phase::Failed),
        (Phase::Pending, Phase::Deleted),
        (Phase::Creating, Phase::Initializing),
        (Phase::Creating, Phase::Stopping),
        (Phase::Creating, Phase::Failed),
        (Phase::Initializing, Phase::Running),
        (Phase::Initializing, Phase::Stopping),
        (Phase::Initializing, Phase::Failed),
        (Phase::Running, Phase::Stopping),
        (Phase::Running, Phase::Failed),
        (Phase::Stopping, Phase::Stopped),
        (Phase::Stopping, Phase::Failed),
        (Phase::Stopped, Phase::Pending),
        (Phase::Stopped, Phase::Deleted),
        (Phase::Failed, Phase::Pending),
        (Phase::Failed, Phase::Stopping),
        (Phase::Failed, Phase::Stopped),
        (Phase::Failed, Phase::Deleted),
    ];

    #[test]
    fn every_pair_of_phases() {
        let mut allowed_seen = 0;
        for from in Phase::ALL {
            for to in Phase::ALL {
                let mut lc = at(from);
                let later = T0 + Duration::minutes(1);
                let result = lc.transition(to, later, Some("why".into()));
                if ALLOWED.contains(&(from, to)) {
                    allowed_seen += 1;
                    assert_eq!(result, Ok(()), "{from} -> {to} should be allowed");
                    assert_eq!(lc.phase, to);
                    assert_eq!(lc.history.len(), 2);
                    assert_eq!(
                        lc.history[1],
                        PhaseChange {
                            phase: to,
                            at: later,
                            message: Some("why".into())
                        }
                    );
                    assert_eq!(lc.since(), later);
                } else {
                    assert_eq!(
                        result,
                        Err(LifecycleError::IllegalTransition { from, to }),
                        "{from} -> {to} should be rejected"
                    );
                    // A rejected transition leaves everything as it was.
                    assert_eq!(lc, at(from));
                }
            }
        }
        assert_eq!(allowed_seen, ALLOWED.len());
    }

    #[test]
    fn same_phase_and_deleted_are_never_left() {
        for p in Phase::ALL {
            assert!(!p.can_move_to(p), "{p} -> {p}");
            assert!(!Phase::Deleted.can_move_to(p));
        }
    }

    #[test]
    fn full_happy_path() {
        let mut lc = Lifecycle::new(Desired::Running, T0);
        let path = [
            Phase::Creating,
            Phase::Initializing,
            Phase::Running,
            Phase::Stopping,
            Phase::Stopped,
            Phase::Pending,
            Phase::Creating,
            Phase::Failed,
            Phase::Stopping,
            Phase::Stopped,
            Phase::Deleted,
        ];
        for (i, p) in path.into_iter().enumerate() {
            lc.transition(p, T0 + Duration::seconds(i as i64 + 1), None)
                .unwrap();
        }
        assert_eq!(lc.phase, Phase::Deleted);
        assert_eq!(lc.history.len(), path.len() + 1);
        assert_eq!(lc.since(), T0 + Duration::seconds(path.len() as i64));
    }

    #[test]
    fn error_message_names_phases() {
        let mut lc = at(Phase::Running);
        let err = lc.transition(Phase::Pending, T0, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a workspace cannot go from running to pending"
        );
    }

    #[test]
    fn new_starts_pending_with_one_entry() {
        let lc = Lifecycle::new(Desired::Stopped, T0);
        assert_eq!(lc.desired, Desired::Stopped);
        assert_eq!(lc.phase, Phase::Pending);
        assert_eq!(
            lc.history,
            vec![PhaseChange {
                phase: Phase::Pending,
                at: T0,
                message: None
            }]
        );
        assert_eq!(lc.since(), T0);
    }

    #[test]
    fn restore_keeps_what_it_is_given() {
        let history = vec![PhaseChange {
            phase: Phase::Pending,
            at: T0,
            message: Some("x".into()),
        }];
        // Deliberately inconsistent: restore does not check.
        let lc = Lifecycle::restore(Desired::Deleted, Phase::Running, history.clone());
        assert_eq!(lc.desired, Desired::Deleted);
        assert_eq!(lc.phase, Phase::Running);
        assert_eq!(lc.history, history);
    }

    #[test]
    fn since_without_history_is_epoch() {
        let lc = Lifecycle::restore(Desired::Running, Phase::Running, Vec::new());
        assert_eq!(lc.since(), OffsetDateTime::UNIX_EPOCH);
    }

    #[test]
    fn history_is_bounded_and_keeps_the_first_entry() {
        let mut lc = Lifecycle::new(Desired::Running, T0);
        let mut t = T0;
        // Cycle Pending -> Stopped -> Pending ... well past the limit.
        for i in 0..(3 * HISTORY_LIMIT) {
            t += Duration::seconds(1);
            let to = if i % 2 == 0 {
                Phase::Stopped
            } else {
                Phase::Pending
            };
            lc.transition(to, t, None).unwrap();
            assert!(lc.history.len() <= HISTORY_LIMIT);
        }
        assert_eq!(lc.history.len(), HISTORY_LIMIT);
        assert_eq!(lc.history[0].at, T0, "creation entry is kept");
        assert_eq!(lc.history.last().map(|c| c.at), Some(t));
        // The entries after the first are the most recent ones, in order.
        assert_eq!(
            lc.history[1].at,
            t - Duration::seconds(HISTORY_LIMIT as i64 - 2)
        );
        assert!(lc.history.windows(2).all(|w| w[0].at < w[1].at));
    }

    #[test]
    fn history_exactly_at_limit_is_not_trimmed() {
        let mut lc = Lifecycle::new(Desired::Running, T0);
        for i in 1..HISTORY_LIMIT {
            let to = if i % 2 == 1 {
                Phase::Stopped
            } else {
                Phase::Pending
            };
            lc.transition(to, T0 + Duration::seconds(i as i64), None)
                .unwrap();
        }
        assert_eq!(lc.history.len(), HISTORY_LIMIT);
        assert_eq!(lc.history[1].at, T0 + Duration::seconds(1));
    }

    #[test]
    fn set_desired_changes_freely_until_deleted() {
        let mut lc = Lifecycle::new(Desired::Running, T0);
        lc.set_desired(Desired::Stopped).unwrap();
        assert_eq!(lc.desired, Desired::Stopped);
        lc.set_desired(Desired::Running).unwrap();
        assert_eq!(lc.desired, Desired::Running);
        lc.set_desired(Desired::Running).unwrap();
        lc.set_desired(Desired::Deleted).unwrap();
        assert_eq!(lc.desired, Desired::Deleted);
        // Deleting again is accepted (retries), anything else is not.
        lc.set_desired(Desired::Deleted).unwrap();
        assert_eq!(
            lc.set_desired(Desired::Running),
            Err(LifecycleError::Deleted)
        );
        assert_eq!(
            lc.set_desired(Desired::Stopped),
            Err(LifecycleError::Deleted)
        );
        assert_eq!(lc.desired, Desired::Deleted);
    }

    #[test]
    fn set_desired_refuses_to_revive_a_deleted_phase() {
        let mut lc = Lifecycle::restore(Desired::Stopped, Phase::Deleted, Vec::new());
        assert_eq!(
            lc.set_desired(Desired::Running),
            Err(LifecycleError::Deleted)
        );
        assert_eq!(
            lc.set_desired(Desired::Stopped),
            Err(LifecycleError::Deleted)
        );
        assert_eq!(lc.desired, Desired::Stopped);
        lc.set_desired(Desired::Deleted).unwrap();
        assert_eq!(lc.desired, Desired::Deleted);
    }

    #[test]
    fn active_phases() {
        for p in Phase::ALL {
            let want = matches!(
                p,
                Phase::Creating | Phase::Initializing | Phase::Running | Phase::Stopping
            );
            assert_eq!(at(p).is_active(), want, "{p}");
            assert_eq!(p.is_active(), want, "{p}");
        }
    }

    #[test]
    fn next_action_for_every_desired_and_phase() {
        use Action as A;
        use Phase as P;
        let table: [(Desired, [Action; 8]); 3] = [
            // Pending, Creating, Initializing, Running, Stopping, Stopped, Failed, Deleted
            (
                Desired::Running,
                [
                    A::Start,
                    A::None,
                    A::None,
                    A::None,
                    A::None,
                    A::Start,
                    A::None,
                    A::None,
                ],
            ),
            (
                Desired::Stopped,
                [
                    A::None,
                    A::Stop,
                    A::Stop,
                    A::Stop,
                    A::None,
                    A::None,
                    A::None,
                    A::None,
                ],
            ),
            (
                Desired::Deleted,
                [
                    A::Delete,
                    A::Stop,
                    A::Stop,
                    A::Stop,
                    A::Stop,
                    A::Delete,
                    A::Delete,
                    A::None,
                ],
            ),
        ];
        for (desired, actions) in table {
            for (phase, want) in P::ALL.into_iter().zip(actions) {
                let lc = Lifecycle::restore(desired, phase, Vec::new());
                assert_eq!(lc.next_action(), want, "desired {desired}, phase {phase}");
            }
        }
    }

    #[test]
    fn next_action_is_reachable_by_a_legal_transition() {
        // Start means Pending/Stopped -> (Pending) -> Creating, Stop means -> Stopping,
        // Delete means -> Deleted; each must be a legal move from the phase.
        for desired in Desired::ALL {
            for phase in Phase::ALL {
                let lc = Lifecycle::restore(desired, phase, Vec::new());
                match lc.next_action() {
                    Action::None => {}
                    Action::Start => assert!(
                        phase.can_move_to(Phase::Creating) || phase.can_move_to(Phase::Pending)
                    ),
                    Action::Stop => {
                        assert!(phase.can_move_to(Phase::Stopping) || phase == Phase::Stopping)
                    }
                    Action::Delete => assert!(phase.can_move_to(Phase::Deleted)),
                }
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for p in Phase::ALL {
            assert_eq!(Phase::parse(p.as_str()), Some(p));
            assert_eq!(p.to_string(), p.as_str());
            assert_eq!(p.as_str(), p.as_str().to_lowercase());
        }
        for d in Desired::ALL {
            assert_eq!(Desired::parse(d.as_str()), Some(d));
            assert_eq!(d.to_string(), d.as_str());
        }
        assert_eq!(Phase::Initializing.as_str(), "initializing");
        assert_eq!(Phase::parse("Running"), None);
        assert_eq!(Phase::parse(""), None);
        assert_eq!(Desired::parse("pending"), None);
        assert_eq!(Desired::Stopped.as_str(), "stopped");
    }
}
