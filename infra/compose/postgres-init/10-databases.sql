-- Run once by the postgres image on an empty data volume, as POSTGRES_USER (the owner of
-- what it creates). One database per role of DESIGN.md section 3; no password here.
CREATE DATABASE prefect;
CREATE DATABASE mlflow;
CREATE DATABASE predictions;
