//go:build mutants

package caddymodule

// underMutants is set by scripts/mutants.sh (-tags mutants): each mutant
// reruns the package, so the load tests that add nothing over the rest
// of the suite for a one-line change step aside.
const underMutants = true
