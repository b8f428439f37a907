//! Integration tests: the real `aiq` binary against the built-in simulator
//! on 127.0.0.1, one test binary split into themed modules.

mod it;
