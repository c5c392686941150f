//go:build !mutants

package caddymodule

const underMutants = false
