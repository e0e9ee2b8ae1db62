//go:build ignore

// Command redis-clients measures the two Redis clients imapgate could use,
// github.com/redis/go-redis/v9 (v9.23.0) and github.com/redis/rueidis
// (v1.0.79), on the call imapgate makes: EVALSHA of a small script (two
// HINCRBY, an HGETALL, two HINCRBY back), from 1, 8 and 64 goroutines:
// throughput, latency, and the client's CPU per call. It is not built with
// imapgate (go-redis is not one of its modules); run it in a scratch module
// against a private Redis on 127.0.0.1:16399:
//
//	mkdir /tmp/clbench && cp main.go /tmp/clbench && cd /tmp/clbench
//	go mod init clbench && go get github.com/redis/go-redis/v9@v9.23.0 github.com/redis/rueidis@v1.0.79
//	redis-server --port 16399 --bind 127.0.0.1 --save "" --daemonize yes
//	go build -o clbench . && taskset -c 1 ./clbench goredis && taskset -c 1 ./clbench rueidis
package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"
)

const src = `
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
local m = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
local v = redis.call('HGETALL', KEYS[1])
redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
redis.call('HINCRBY', KEYS[2], ARGV[1], -1)
return {n, m, #v}
`

func cpu() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func run(name string, conc, n int, call func(i int) error) {
	lat := make([]time.Duration, n)
	var wg sync.WaitGroup
	c0 := cpu()
	t0 := time.Now()
	per := n / conc
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for j := 0; j < per; j++ {
				i := w*per + j
				s := time.Now()
				if err := call(i); err != nil {
					panic(err)
				}
				lat[i] = time.Since(s)
			}
		}(w)
	}
	wg.Wait()
	el := time.Since(t0)
	c := cpu() - c0
	lat = lat[:per*conc]
	sort.Slice(lat, func(a, b int) bool { return lat[a] < lat[b] })
	fmt.Printf("%-8s conc=%-3d %7.0f calls/s  p50 %6.1fµs p99 %6.1fµs  client CPU %5.1fµs/call\n", name, conc,
		float64(len(lat))/el.Seconds(), float64(lat[len(lat)/2].Nanoseconds())/1e3, float64(lat[len(lat)*99/100].Nanoseconds())/1e3,
		float64(c.Nanoseconds())/1e3/float64(len(lat)))
}

func main() {
	ctx := context.Background()
	addr := "127.0.0.1:16399"
	which := os.Args[1]
	n := 40000
	for _, conc := range []int{1, 8, 64} {
		switch which {
		case "goredis":
			c := redis.NewClient(&redis.Options{Addr: addr, PoolSize: 64, MaxRetries: -1})
			s := redis.NewScript(src)
			s.Load(ctx, c)
			run("go-redis", conc, n, func(i int) error {
				_, err := s.EvalSha(ctx, c, []string{"{x}:a", "{x}:b"}, "node1").Result()
				return err
			})
			c.Close()
		case "rueidis":
			c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{addr}, DisableCache: true})
			if err != nil {
				panic(err)
			}
			s := rueidis.NewLuaScript(src)
			run("rueidis", conc, n, func(i int) error {
				return s.Exec(ctx, c, []string{"{x}:a", "{x}:b"}, []string{"node1"}).Error()
			})
			c.Close()
		}
	}
}
