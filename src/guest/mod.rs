//! The guest stage: overlay, resize, grow, customize, ttyd, hygiene, finalize.
