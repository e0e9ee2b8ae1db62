package cluster

import "github.com/redis/rueidis"

type (
	rueidisClient  = rueidis.Client
	rueidisMessage = rueidis.PubSubMessage
)

func isNil(err error) bool { return rueidis.IsRedisNil(err) }
