//! Packing a finished disk and sending it to every output of a build.
