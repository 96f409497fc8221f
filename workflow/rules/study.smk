# The study folder's record (results/<study>/study.json, tokencarbon.study): the study's name, the
# config file(s) it was made from, the config's SHA-256 and the files `all` makes, so that no file
# of another config passes for this one's; common.smk compares it with each run before any job.
# Its params are the record: an edited config rewrites it, and reruns nothing else.


rule record_study:
    output:
        PLAN.study_record(),
    log:
        PLAN.log("record_study.log"),
    params:
        record=STUDY_RECORD,
    run:
        from tokencarbon.study import write_record

        write_record(output[0], params.record)
