package store

import "github.com/jackc/pgx/v5"

func pgxConfig(url string) (*pgx.ConnConfig, error) { return pgx.ParseConfig(url) }
