from services.contacts.main import main

main()
