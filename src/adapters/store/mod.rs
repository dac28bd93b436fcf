//! Implementations of [`dynabase_actors::Store`].
