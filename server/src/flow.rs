//! When a connection's bytes move: what the connection task decides about
//! writing, waiting for a commit and pausing its input, without its I/O.
//!
//! The task (`runtime/connection.rs`) owns the socket, the TLS state and
//! the buffers; it asks [`Flow`] at two points of every step and does what
//! the answer says:
//! - with bytes for the phone, [`Flow::flush`]: write them now, one poll
//!   later (after the tasks already queued have run and perhaps added more
//!   for the same phone, so that one send carries them all), or once the
//!   commit that makes them count has finished (so that the `Sent` replies
//!   it releases leave in the same send);
//! - before reading, [`Flow::read`]: frames kept in the inbox first, then
//!   the socket, unless the shard wants no input (the outbox is over its
//!   bound) or a link to another shard that this connection's input took
//!   over its limit has not drained yet.
//!
//! `Flow` holds no waker and reads no clock: where a wait needs the task's
//! waker on a list, the answer says so, and the task puts it there. Time is
//! counted in polls of the task and commits finished.

/// What the commits look like to a connection about to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitProgress {
    /// Commits finished so far (each one numbered by its order of start,
    /// from 1).
    pub done: u64,
    /// The commit in flight waits to be retried (a full disk, a resource
    /// short). What an outbox holds promises nothing durable (`Sent` waits
    /// in the shard), so nothing waits for such a commit.
    pub stalled: bool,
}

/// What to do with the bytes waiting for the phone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Take the outbox and write it.
    Now,
    /// Not on this poll: after the tasks already queued have run. `wake`:
    /// the task wakes itself so that it is polled again after them (only
    /// when the bytes are first seen; later answers on the same poll say
    /// false).
    Later { wake: bool },
    /// Wait for a commit to finish. `register`: the task puts its waker on
    /// the list the commit task wakes (it is not on it since the last
    /// commit finished).
    Hold { register: bool },
}

/// A link to another shard as it is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkState {
    /// Over its staging limit.
    pub congested: bool,
    /// How many times its paused connections have been woken.
    pub drains: u64,
}

/// What to do about input now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Handle the frames kept in the inbox (they came with a handover, or
    /// were left when the shard stopped wanting input).
    Inbox,
    /// Read from the socket.
    Socket,
    /// Paused: the link to `destination` is over its limit. `register`: the
    /// task puts its waker on that link's list (it is not on it since the
    /// link last drained).
    Paused { destination: u16, register: bool },
    /// No input wanted: the outbox is over its bound, or the connection
    /// closes or moves away.
    Nothing,
}

/// One connection's flow state. See the module doc.
#[derive(Debug, Default)]
pub struct Flow {
    /// Times the task has been polled.
    polls: u64,
    /// Set to `polls` when bytes for the phone were first seen: they are
    /// written on a later poll.
    flush_after: Option<u64>,
    /// Set when bytes were first seen (unless the commit in flight is
    /// stalled): the commit that covers what was recorded then. They wait
    /// for that commit, never a later one.
    hold_until: Option<u64>,
    /// Commits done when the task went on the commit's holding list.
    held_at: Option<u64>,
    /// Handle the inbox before reading the socket.
    replay: bool,
    /// The link this connection's input took over its limit.
    paused_on: Option<u16>,
    /// That link's drain count when the task went on its list.
    blocked_at: Option<u64>,
}

impl Flow {
    /// A connection's flow; `replay` when its inbox starts with frames (a
    /// connection handed over by another shard).
    pub fn new(replay: bool) -> Flow {
        Flow {
            replay,
            ..Flow::default()
        }
    }

    /// The task is being polled again.
    pub fn polled(&mut self) {
        self.polls += 1;
    }

    /// Bytes wait for the phone and the socket has taken all it was given:
    /// whether to write them now. `covering_now` is the commit that makes
    /// durable everything recorded so far; it is asked only when bytes are
    /// first seen.
    pub fn flush(&mut self, commits: CommitProgress, covering_now: impl FnOnce() -> u64) -> Flush {
        let needed = match commits.stalled {
            true => 0,
            false => *self.hold_until.get_or_insert_with(covering_now),
        };
        if needed > commits.done {
            let register = self.held_at != Some(commits.done);
            if register {
                self.held_at = Some(commits.done);
            }
            return Flush::Hold { register };
        }
        // Woken by the commit: the tasks queued since have run already.
        let waited = needed > 0 && self.held_at.is_some();
        self.hold_until = None;
        self.held_at = None;
        match self.flush_after {
            _ if waited => {
                self.flush_after = None;
                Flush::Now
            }
            Some(poll) if poll < self.polls => {
                self.flush_after = None;
                Flush::Now
            }
            Some(_) => Flush::Later { wake: false },
            None => {
                // The outbox stays in the shard meanwhile, so it can grow.
                self.flush_after = Some(self.polls);
                Flush::Later { wake: true }
            }
        }
    }

    /// Whether to read, and from where. `wants_input`: the shard wants this
    /// connection's input and it is not moving away. `link` tells the state
    /// of a link this connection is paused on.
    pub fn read(&mut self, wants_input: bool, link: impl FnOnce(u16) -> LinkState) -> Read {
        if self.replay && wants_input {
            self.replay = false;
            return Read::Inbox;
        }
        if let Some(destination) = self.paused_on {
            let link = link(destination);
            if link.congested {
                // Polled again while paused (say, to write a delivery): the
                // waker is already on the list unless it was drained since.
                let register = self.blocked_at != Some(link.drains);
                if register {
                    self.blocked_at = Some(link.drains);
                }
                return Read::Paused {
                    destination,
                    register,
                };
            }
            self.paused_on = None;
            self.blocked_at = None;
        }
        if wants_input {
            Read::Socket
        } else {
            Read::Nothing
        }
    }

    /// Input stopped with bytes left in the inbox: if `whole_frame` (asked
    /// only when no replay is due yet) says a whole frame is among them, it
    /// is handled before the next read.
    pub fn kept(&mut self, whole_frame: impl FnOnce() -> bool) {
        if !self.replay {
            self.replay = whole_frame();
        }
    }

    /// This connection's input took the link to `destination` over its
    /// limit: reading pauses until it drains.
    pub fn pause_on(&mut self, destination: u16) {
        if self.paused_on != Some(destination) {
            // The waker is on no list of this link yet, whatever another
            // link's drain count was: a kept frame handled while paused
            // can move the pause to another link.
            self.blocked_at = None;
        }
        self.paused_on = Some(destination);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commits(done: u64) -> CommitProgress {
        CommitProgress {
            done,
            stalled: false,
        }
    }

    fn not_asked() -> u64 {
        panic!("the covering commit is asked only when bytes are first seen")
    }

    fn link(congested: bool, drains: u64) -> impl FnOnce(u16) -> LinkState {
        move |_| LinkState { congested, drains }
    }

    fn no_link(destination: u16) -> LinkState {
        panic!("asked about link {destination} while not paused")
    }

    #[test]
    fn bytes_with_nothing_to_commit_wait_one_poll() {
        let mut flow = Flow::new(false);
        flow.polled();
        assert_eq!(flow.flush(commits(0), || 0), Flush::Later { wake: true });
        // Asked again on the same poll: still later, and no second wake-up.
        assert_eq!(flow.flush(commits(0), || 0), Flush::Later { wake: false });
        flow.polled();
        assert_eq!(flow.flush(commits(0), || 0), Flush::Now);
    }

    #[test]
    fn after_a_write_the_next_bytes_wait_a_poll_again() {
        let mut flow = Flow::new(false);
        flow.polled();
        flow.flush(commits(3), || 3);
        flow.polled();
        assert_eq!(flow.flush(commits(3), || 3), Flush::Now);
        assert_eq!(flow.flush(commits(3), || 3), Flush::Later { wake: true });
    }

    #[test]
    fn bytes_seen_while_a_commit_is_due_wait_for_it_and_then_go_at_once() {
        let mut flow = Flow::new(false);
        flow.polled();
        assert_eq!(flow.flush(commits(4), || 5), Flush::Hold { register: true });
        // Polled again before the commit finished: already on the list.
        flow.polled();
        assert_eq!(
            flow.flush(commits(4), not_asked),
            Flush::Hold { register: false }
        );
        // Woken by the commit: the tasks queued meanwhile have run.
        flow.polled();
        assert_eq!(flow.flush(commits(5), not_asked), Flush::Now);
    }

    #[test]
    fn bytes_wait_for_the_commit_due_when_they_appeared_never_a_later_one() {
        let mut flow = Flow::new(false);
        flow.polled();
        assert_eq!(flow.flush(commits(0), || 1), Flush::Hold { register: true });
        // Commit 1 finished and commit 2 is due by now: the bytes go.
        flow.polled();
        assert_eq!(flow.flush(commits(1), || 2), Flush::Now);
    }

    #[test]
    fn a_hold_across_several_commits_goes_back_on_the_list_after_each() {
        let mut flow = Flow::new(false);
        flow.polled();
        // Not possible with one commit in flight, but the rule is general:
        // the list is drained on every commit, so each needs a new entry.
        assert_eq!(flow.flush(commits(0), || 2), Flush::Hold { register: true });
        assert_eq!(
            flow.flush(commits(1), not_asked),
            Flush::Hold { register: true }
        );
        assert_eq!(
            flow.flush(commits(1), not_asked),
            Flush::Hold { register: false }
        );
        assert_eq!(flow.flush(commits(2), not_asked), Flush::Now);
    }

    #[test]
    fn a_stalled_commit_holds_no_bytes() {
        let mut flow = Flow::new(false);
        let stalled = CommitProgress {
            done: 4,
            stalled: true,
        };
        flow.polled();
        assert_eq!(flow.flush(stalled, not_asked), Flush::Later { wake: true });
        flow.polled();
        assert_eq!(flow.flush(stalled, not_asked), Flush::Now);
    }

    #[test]
    fn a_commit_that_stalls_while_bytes_are_held_releases_them() {
        let mut flow = Flow::new(false);
        flow.polled();
        assert_eq!(flow.flush(commits(4), || 5), Flush::Hold { register: true });
        // The commit task woke the holders as it stalled: they go (the
        // wait counts as waited only for a commit that finished).
        flow.polled();
        let stalled = CommitProgress {
            done: 4,
            stalled: true,
        };
        assert_eq!(flow.flush(stalled, not_asked), Flush::Later { wake: true });
    }

    #[test]
    fn bytes_whose_commit_is_already_done_wait_one_poll() {
        let mut flow = Flow::new(false);
        flow.polled();
        assert_eq!(flow.flush(commits(7), || 7), Flush::Later { wake: true });
        // A commit became due meanwhile: the bytes now wait for it too.
        flow.polled();
        assert_eq!(flow.flush(commits(7), || 8), Flush::Hold { register: true });
        flow.polled();
        assert_eq!(flow.flush(commits(8), not_asked), Flush::Now);
    }

    #[test]
    fn a_handed_over_connection_handles_its_inbox_before_reading() {
        let mut flow = Flow::new(true);
        assert_eq!(flow.read(true, no_link), Read::Inbox);
        assert_eq!(flow.read(true, no_link), Read::Socket);
    }

    #[test]
    fn nothing_is_read_while_no_input_is_wanted_not_even_the_inbox() {
        let mut flow = Flow::new(true);
        assert_eq!(flow.read(false, no_link), Read::Nothing);
        assert_eq!(flow.read(true, no_link), Read::Inbox);
    }

    #[test]
    fn frames_kept_by_backpressure_are_handled_once_input_is_wanted() {
        let mut flow = Flow::new(false);
        flow.kept(|| true);
        // Already due: not asked again.
        flow.kept(|| panic!("asked while a replay is due"));
        assert_eq!(flow.read(true, no_link), Read::Inbox);
        assert_eq!(flow.read(true, no_link), Read::Socket);
        // A partial frame kept: the socket comes first.
        flow.kept(|| false);
        assert_eq!(flow.read(true, no_link), Read::Socket);
    }

    #[test]
    fn a_congested_link_pauses_reading_with_one_registration_per_drain() {
        let mut flow = Flow::new(false);
        flow.pause_on(3);
        let paused = |register| Read::Paused {
            destination: 3,
            register,
        };
        assert_eq!(flow.read(true, link(true, 0)), paused(true));
        assert_eq!(flow.read(true, link(true, 0)), paused(false));
        // Drained once and over the limit again: the list was emptied.
        assert_eq!(flow.read(true, link(true, 1)), paused(true));
        assert_eq!(flow.read(true, link(false, 2)), Read::Socket);
        // No longer paused: the link is not asked about.
        assert_eq!(flow.read(true, no_link), Read::Socket);
    }

    #[test]
    fn a_paused_connection_still_handles_its_kept_frames() {
        let mut flow = Flow::new(false);
        flow.pause_on(1);
        flow.kept(|| true);
        assert_eq!(flow.read(true, no_link), Read::Inbox);
        assert_eq!(
            flow.read(true, link(true, 0)),
            Read::Paused {
                destination: 1,
                register: true
            }
        );
    }

    #[test]
    fn a_paused_connection_that_wants_no_input_reads_nothing_once_the_link_drains() {
        let mut flow = Flow::new(false);
        flow.pause_on(2);
        assert_eq!(flow.read(false, link(false, 5)), Read::Nothing);
        assert_eq!(flow.read(true, no_link), Read::Socket);
    }

    /// Regression: paused on link 1 (registered at its drain count 4), a
    /// kept frame took link 2 over its limit while link 2's drain count was
    /// also 4; the task believed it was on link 2's list and was never
    /// woken.
    #[test]
    fn a_pause_moved_to_another_link_registers_on_that_link() {
        let mut flow = Flow::new(false);
        flow.pause_on(1);
        assert!(matches!(
            flow.read(true, link(true, 4)),
            Read::Paused { register: true, .. }
        ));
        flow.kept(|| true);
        assert_eq!(flow.read(true, no_link), Read::Inbox);
        flow.pause_on(2);
        assert_eq!(
            flow.read(true, link(true, 4)),
            Read::Paused {
                destination: 2,
                register: true
            }
        );
    }
}
