//! Integration and end-to-end tests.
