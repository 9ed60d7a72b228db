"""Models with a known answer and tiny offline models, for the demo, the tests and the benchmarks.

Not part of the product's runtime path: no module of service/, cluster/ or the SDK imports this
package (tests/contract/test_architecture.py checks it); `llc demo` uses it in a child process.
"""
