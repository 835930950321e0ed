//! The exit-code table (docs/outputs.md): one type for a drill, a suite and the binary.

/// How a drill, a suite or a command ended, as its process exit code says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Exit {
    /// Every objective met and every check passed (0).
    Met,
    /// An objective missed, a check failed, a step failed or overran, a regression (1).
    Missed,
    /// The scenario file or the command line is wrong (2).
    Usage,
    /// The environment failed: the engine, an image, the host's disk, a port (3).
    Environment,
    /// A signal stopped it (130).
    Interrupted,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Exit::Met => 0,
            Exit::Missed => 1,
            Exit::Usage => 2,
            Exit::Environment => 3,
            Exit::Interrupted => 130,
        }
    }

    /// How bad it is, for [`Exit::worst`]: interrupted, then environment, then usage, then
    /// missed, then met.
    fn severity(self) -> u8 {
        match self {
            Exit::Met => 0,
            Exit::Missed => 1,
            Exit::Usage => 2,
            Exit::Environment => 3,
            Exit::Interrupted => 4,
        }
    }

    /// The worst of several (a suite's exit); [`Exit::Met`] for none.
    pub fn worst(exits: impl IntoIterator<Item = Exit>) -> Exit {
        exits
            .into_iter()
            .max_by_key(|e| e.severity())
            .unwrap_or(Exit::Met)
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e.code())
    }
}

#[cfg(test)]
mod tests {
    use super::Exit::*;
    use super::*;

    #[test]
    fn the_worst_exit_wins() {
        assert_eq!(Exit::worst([Met, Missed, Met]), Missed);
        assert_eq!(Exit::worst([Missed, Environment, Met]), Environment);
        assert_eq!(Exit::worst([Environment, Interrupted, Missed]), Interrupted);
        assert_eq!(Exit::worst([Usage, Missed]), Usage);
        assert_eq!(Exit::worst([]), Met);
    }

    #[test]
    fn codes_are_the_documented_ones() {
        let codes: Vec<u8> = [Met, Missed, Usage, Environment, Interrupted]
            .iter()
            .map(|e| e.code())
            .collect();
        assert_eq!(codes, [0, 1, 2, 3, 130]);
    }
}
