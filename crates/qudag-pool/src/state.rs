//! The connection lifecycle state machine: [`StateMachine`], the
//! [`Transition`] event and [`TransitionError`], over [`ConnState`] (one type
//! for the whole workspace, defined in `qudag-metrics`, the lowest crate that
//! names it).

pub use qudag_metrics::ConnState;

/// A state change that happened: the event to publish (to metrics and to users).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Transition {
    /// The state before the change.
    pub from: ConnState,
    /// The state after the change.
    pub to: ConnState,
}

/// A refused state change; the state machine is left unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[error("connection state transition from {from} to {to} is not allowed")]
pub struct TransitionError {
    /// The current state, which was kept.
    pub from: ConnState,
    /// The refused target state.
    pub to: ConnState,
}

/// The lifecycle of one connection: starts in [`ConnState::New`] and only
/// moves along the transitions documented on [`ConnState`].
///
/// It is a plain value (no IO, no clock); the owner applies transitions and
/// publishes the returned [`Transition`] events.
///
/// # Examples
///
/// ```
/// use qudag_pool::{ConnState, StateMachine};
///
/// let mut sm = StateMachine::new();
/// let event = sm.transition(ConnState::Connecting).unwrap();
/// assert_eq!((event.from, event.to), (ConnState::New, ConnState::Connecting));
/// // A connection that never connected cannot be "disconnected".
/// let err = sm.transition(ConnState::Disconnected).unwrap_err();
/// assert_eq!(err.from, ConnState::Connecting);
/// assert_eq!(sm.state(), ConnState::Connecting);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateMachine {
    state: ConnState,
}

impl Default for StateMachine {
    fn default() -> Self {
        Self::new()
    }
}

impl StateMachine {
    /// A state machine in [`ConnState::New`].
    pub const fn new() -> Self {
        Self {
            state: ConnState::New,
        }
    }

    /// The current state.
    pub const fn state(&self) -> ConnState {
        self.state
    }

    /// Applies a transition to `to`.
    ///
    /// Returns the [`Transition`] event to publish, or a [`TransitionError`]
    /// (and leaves the state unchanged) if [`StateMachine::is_allowed`] refuses it.
    pub fn transition(&mut self, to: ConnState) -> Result<Transition, TransitionError> {
        let from = self.state;
        if Self::is_allowed(from, to) {
            self.state = to;
            Ok(Transition { from, to })
        } else {
            Err(TransitionError { from, to })
        }
    }

    /// Whether `from -> to` is one of the transitions documented on [`ConnState`].
    pub const fn is_allowed(from: ConnState, to: ConnState) -> bool {
        use ConnState::*;
        matches!(
            (from, to),
            (New, Connecting)
                | (Connecting, Connected)
                | (Connecting, Failed)
                | (Connected, Disconnected)
                | (Connected, Failed)
                | (Disconnected, Connecting)
                | (Disconnected, Connected)
                | (Failed, Connecting)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ConnState::*;

    /// The documented table, written out independently of `is_allowed`.
    const ALLOWED: [(ConnState, ConnState); 8] = [
        (New, Connecting),
        (Connecting, Connected),
        (Connecting, Failed),
        (Connected, Disconnected),
        (Connected, Failed),
        (Disconnected, Connecting),
        (Disconnected, Connected),
        (Failed, Connecting),
    ];

    /// Puts a machine in `state` through allowed transitions only.
    fn machine_in(state: ConnState) -> StateMachine {
        let path: &[ConnState] = match state {
            New => &[],
            Connecting => &[Connecting],
            Connected => &[Connecting, Connected],
            Disconnected => &[Connecting, Connected, Disconnected],
            Failed => &[Connecting, Failed],
        };
        let mut sm = StateMachine::new();
        for &s in path {
            sm.transition(s).expect("path uses allowed transitions");
        }
        assert_eq!(sm.state(), state);
        sm
    }

    #[test]
    fn exhaustive_over_all_25_pairs() {
        let mut allowed = 0;
        for from in ConnState::ALL {
            for to in ConnState::ALL {
                let expect = ALLOWED.contains(&(from, to));
                assert_eq!(StateMachine::is_allowed(from, to), expect, "{from} -> {to}");
                let mut sm = machine_in(from);
                match sm.transition(to) {
                    Ok(ev) => {
                        assert!(expect, "{from} -> {to} accepted");
                        assert_eq!(ev, Transition { from, to });
                        assert_eq!(sm.state(), to);
                        allowed += 1;
                    }
                    Err(e) => {
                        assert!(!expect, "{from} -> {to} refused");
                        assert_eq!(e, TransitionError { from, to });
                        assert_eq!(sm.state(), from, "state unchanged on error");
                    }
                }
            }
        }
        assert_eq!(allowed, ALLOWED.len());
    }

    #[test]
    fn starts_new_and_error_message_is_lowercase() {
        assert_eq!(StateMachine::new().state(), New);
        assert_eq!(StateMachine::default(), StateMachine::new());
        let e = TransitionError {
            from: New,
            to: Connected,
        };
        assert_eq!(
            e.to_string(),
            "connection state transition from new to connected is not allowed"
        );
    }

    #[test]
    fn redial_cycles() {
        let mut sm = StateMachine::new();
        for to in [
            Connecting,
            Failed,
            Connecting,
            Connected,
            Disconnected,
            Connecting,
            Connected,
            Failed,
        ] {
            sm.transition(to).unwrap();
        }
        assert_eq!(sm.state(), Failed);
    }
}
