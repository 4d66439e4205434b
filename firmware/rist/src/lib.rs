//! Bonded RIST.
