"""A tiny shop: the example project that `./build.sh demo` runs."""
