//! Nothing to export: the black-box tests and their harness live in `tests/blackbox/`.
