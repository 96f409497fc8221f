# The study folder's record (results/<study>/study.json, tokencarbon.study): the study's name, the
# config file(s) it was made from, the config's SHA-256 and the files `all` makes, so that no file
# of another config passes for this one's; common.smk compares it with each run before any job.
# Written after every run that ran jobs and succeeded (a hook, not a rule: a config edit that
# changes no job's params plans no job, and a dry run writes nothing); an atomic rename, so a
# record is whole or absent.


onsuccess:
    from tokencarbon.study import write_record

    write_record(PLAN.study_record(), STUDY_RECORD)
