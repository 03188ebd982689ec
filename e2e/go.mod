module github.com/meridian-gw/meridian/e2e

go 1.26

require github.com/meridian-gw/meridian/proto v0.0.0

replace github.com/meridian-gw/meridian/proto => ../proto
