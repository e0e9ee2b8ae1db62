// Package tick runs periodic work on a ticker until told to stop.
package tick

import "time"

// Every calls fn with the tick's time every interval until stop is
// closed. It blocks: run it on a goroutine of its own.
func Every(stop <-chan struct{}, interval time.Duration, fn func(now time.Time)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			fn(now)
		}
	}
}
