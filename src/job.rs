//! What a job tells the person watching it, the same for every job: the stage it is in, how
//! far along that stage is, and lines to read (warnings, notes). Jobs report through
//! [`Observer`]; the CLI draws one kind of bar from it. Part of the floor: it imports nothing
//! of the crate.

/// Receives a job's progress. Every method ignores what it is given unless an observer says
/// otherwise, so an observer takes only what it shows.
pub trait Observer {
    /// A stage begins (`run 3`, `windows`); the progress that follows belongs to it.
    fn stage(&mut self, name: &str) {
        let _ = name;
    }

    /// `done` of `total` units of the current stage, with a short status (`12.3 QPS`).
    fn progress(&mut self, done: u64, total: u64, status: &str) {
        let _ = (done, total, status);
    }

    /// A line for the person to read, a warning or a note, shown above any progress.
    fn line(&mut self, text: &str) {
        let _ = text;
    }
}
