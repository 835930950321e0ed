//! What CI and people read over recorded runs ([`crate::history::RunRecord`]), whether fresh
//! from a suite or read back from the history: JUnit, the Markdown step summary and OpenMetrics
//! ([`ci`]), the self-contained HTML trend report ([`html`]) and the suite's terminal table.

pub mod ci;
pub mod html;
mod terminal;

pub use terminal::terminal_suite;
