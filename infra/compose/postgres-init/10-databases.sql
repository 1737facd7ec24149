-- Run once by the postgres image on an empty data volume, as POSTGRES_USER (the owner of
-- what it creates). One database per role (infra/README.md); no password here.
CREATE DATABASE prefect;
CREATE DATABASE mlflow;
CREATE DATABASE predictions;
