//go:build race

package integration

// raceDetector: the race detector makes TLS several times slower.
const raceDetector = true
