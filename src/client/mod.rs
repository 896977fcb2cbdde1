//! Terminal client (being written).
